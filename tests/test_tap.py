"""``twistd realtime`` options: parsing, environment fallbacks and every start-up error.

Most checks run ``Options().parseOptions`` in-process; the last ones run the real command
line and check that a bad start prints one line and exits non-zero.
"""

from __future__ import annotations

import re
import socket
import sys

import pytest

from realtime.config import MiB, ServerConfig, StartupError
from realtime.tap import Options, load_application, parse_size
from tests.e2e.support import BENCH_APP, run, self_signed, twistd

APP = ["--app", BENCH_APP]
LOOPBACK_8000 = "tcp:port=8000:interface=127.0.0.1:backlog=1024"


def parse(*args: str) -> Options:
    options = Options()
    options.parseOptions([*APP, *args])
    return options


def error(*args: str, app: bool = True) -> str:
    """The one-line message of the StartupError these arguments raise."""
    options = Options()
    with pytest.raises(StartupError) as info:
        options.parseOptions([*APP, *args] if app else list(args))
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("realtime: error: ")
    return message.removeprefix("realtime: error: ")


def descriptions(options: Options) -> list[str]:
    return [description for description, _ in options.listeners]


@pytest.fixture(autouse=True)
def _no_realtime_environment(monkeypatch):
    import os

    for name in list(os.environ):
        if name.startswith("REALTIME_"):
            monkeypatch.delenv(name)


def test_startup_error_is_a_one_line_system_exit():
    exc = StartupError("--x: bad")
    assert isinstance(exc, SystemExit)
    assert str(exc) == "realtime: error: --x: bad"
    assert exc.code == "realtime: error: --x: bad"  # Python prints it and exits with 1


class TestDefaults:
    def test_config(self):
        options = parse()
        assert options.config == ServerConfig()
        assert options.config.max_message_size == MiB
        assert options.config.ping_interval == 20
        assert options.config.ping_timeout == 30
        assert options.config.websocket_timeout == 86400
        assert options.config.connect_timeout == 5
        assert options.config.shutdown_timeout == 10
        # Daphne's -t, -s, --proxy-headers-host/-port and -v defaults (no Server header: ours)
        assert options.config.http_response_timeout == 0
        assert options.config.http_timeout == 60  # the keep-alive idle timeout, unchanged
        assert options.config.server_header == ""
        assert (options.config.proxy_headers_host, options.config.proxy_headers_port) == (
            "X-Forwarded-For", "X-Forwarded-Port")
        assert options.config.root_path_header == ""  # a proxy's root path header: none
        named = parse("--proxy-headers", "--root-path-header", "Daphne-Root-Path")
        assert named.config.root_path_header == "Daphne-Root-Path"
        assert options.verbosity == 1
        assert options.gc_threshold == 7000  # the collector tuned (README "Performance")

    def test_default_listener(self):
        assert parse().listeners == [(LOOPBACK_8000, LOOPBACK_8000)]

    def test_application_loaded(self):
        from realtime.examples.bench import application

        assert parse().application is application


class TestListeners:
    def test_bare_port_is_loopback(self):
        assert descriptions(parse("--port", "0")) == [
            "tcp:port=0:interface=127.0.0.1:backlog=1024"
        ]

    def test_short_p(self):
        assert descriptions(parse("-p", "9001")) == [
            "tcp:port=9001:interface=127.0.0.1:backlog=1024"
        ]

    def test_bind_and_port(self):
        assert descriptions(parse("-b", "0.0.0.0", "--port", "9000")) == [
            "tcp:port=9000:interface=0.0.0.0:backlog=1024"
        ]

    def test_bind_ipv6(self):
        assert descriptions(parse("--bind", "[::1]", "--port", "9000")) == [
            r"tcp:port=9000:interface=\:\:1:backlog=1024"
        ]

    def test_bind_without_port_uses_8000(self):
        assert descriptions(parse("-b", "127.0.0.2")) == [
            "tcp:port=8000:interface=127.0.0.2:backlog=1024"
        ]

    def test_repeatable_port(self):
        assert descriptions(parse("--port", "0", "--port", "tcp:9000:interface=127.0.0.1")) == [
            "tcp:port=0:interface=127.0.0.1:backlog=1024",
            "tcp:9000:interface=127.0.0.1:backlog=1024",
        ]

    def test_named_backlog_kept(self):
        assert descriptions(parse("--port", "tcp:0:backlog=7")) == ["tcp:0:backlog=7"]

    def test_unix_socket(self, tmp_path):
        path = str(tmp_path / "rt.sock")
        assert parse("-u", path).listeners == [(f"unix:{path}", f"unix:{path}")]

    def test_unix_socket_and_port(self, tmp_path):
        path = str(tmp_path / "rt.sock")
        assert descriptions(parse("--unix-socket", path, "--port", "0")) == [
            "tcp:port=0:interface=127.0.0.1:backlog=1024",
            f"unix:{path}",
        ]

    def test_ssl(self, tmp_path):
        cert, key = self_signed(tmp_path)
        desc = f"ssl:0:interface=127.0.0.1:privateKey={key}:certKey={cert}"
        assert descriptions(parse("--port", desc)) == [desc + ":backlog=1024"]

    def test_fd(self):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            sock.listen()
            fd = sock.fileno()
            assert parse("--fd", str(fd)).listeners == [(f"fd:{fd}", (fd, socket.AF_INET))]
            assert sock.fileno() == fd  # still ours

    def test_fd_unix(self, tmp_path):
        with socket.socket(socket.AF_UNIX) as sock:
            sock.bind(str(tmp_path / "s"))
            sock.listen()
            fd = sock.fileno()
            assert parse("--fd", str(fd)).listeners == [(f"fd:{fd}", (fd, socket.AF_UNIX))]


class TestValues:
    @pytest.mark.parametrize(("value", "expected"), [
        ("1048576", MiB), ("1MiB", MiB), ("1M", MiB), ("1mb", MiB), ("64k", 65536),
        ("256KiB", 262144), ("2G", 2048 * MiB), ("10b", 10), (" 7 ", 7),
    ])
    def test_parse_size(self, value, expected):
        assert parse_size(value) == expected

    @pytest.mark.parametrize("delay", [-0.01, 1.01])
    def test_config_bounds_the_broadcast_delay(self, delay):
        with pytest.raises(ValueError, match="broadcast_delay must be between 0 and 1"):
            ServerConfig(broadcast_delay=delay)

    @pytest.mark.parametrize("name", ["proxy_headers_host", "proxy_headers_port"])
    def test_config_refuses_a_proxy_header_name_with_an_underscore(self, name):
        with pytest.raises(ValueError, match=f"{name}: 'X_Real_IP' holds '_'"):
            ServerConfig(**{name: "X_Real_IP"})

    @pytest.mark.parametrize("value", ["", "1.5M", "-1", "M", "1 TiB", "1e6"])
    def test_parse_size_rejects(self, value):
        with pytest.raises(ValueError):
            parse_size(value)

    def test_sizes_and_numbers(self):
        config = parse("--max-message-size", "64KiB", "--max-frame-size", "16k",
                       "--max-inflight", "8", "--max-connections", "100",
                       "--ping-interval", "0.5", "--ping-timeout", "2",
                       "--websocket-timeout", "-1", "--websocket-connect-timeout", "3",
                       "--shutdown-timeout", "0", "--root-path", "/ws",
                       "--health-path", "/live", "--ready-path", "",
                       "--broadcast-delay", "0.05").config
        assert config == ServerConfig(
            max_message_size=65536, max_frame_size=16384, max_inflight=8,
            max_connections=100, ping_interval=0.5, ping_timeout=2, websocket_timeout=-1,
            connect_timeout=3, shutdown_timeout=0, root_path="/ws", health_path="/live",
            ready_path="", broadcast_delay=0.05,
        )


KEY = "k" * 20


class TestInternalPort:
    """``--internal-port``: the operator endpoints' own listener."""

    def test_off_by_default(self):
        options = parse()
        assert options.internal_listener is None and options.internal_what == ""

    def test_a_bare_port_is_loopback_whatever_bind_says(self):
        options = parse("-b", "0.0.0.0", "--port", "0", "--internal-port", "9000")
        internal = "tcp:port=9000:interface=127.0.0.1:backlog=1024"
        assert options.internal_listener == (internal, internal)
        assert descriptions(options) == ["tcp:port=0:interface=0.0.0.0:backlog=1024"]
        assert options.internal_what == " (internal: /healthz, /readyz)"

    def test_a_description_as_given(self, tmp_path):
        cert, key = self_signed(tmp_path)
        desc = f"ssl:9443:interface=10.0.0.5:privateKey={key}:certKey={cert}"
        assert parse("--internal-port", desc).internal_listener == (
            desc + ":backlog=1024",) * 2
        path = str(tmp_path / "ops.sock")
        assert parse("--internal-port", f"unix:{path}").internal_listener == (
            f"unix:{path}",) * 2

    def test_what_it_serves(self):
        options = parse("--port", "0", "--internal-port", "0", "--metrics", "--api-key", KEY,
                        "--admin-path", "/admin", "--health-path", "/live", "--ready-path", "")
        assert options.internal_what == " (internal: /live, /metrics, /api/, /admin)"
        # --metrics-port keeps /metrics on its own listener.
        options = parse("--port", "0", "--internal-port", "0", "--metrics-port", "0",
                        "--api-key", KEY)
        assert options.internal_what == " (internal: /healthz, /readyz, /api/)"
        assert options.metrics_listener == "tcp:port=0:interface=127.0.0.1"

    def test_port_zero_twice_is_two_free_ports(self):
        assert parse("--port", "0", "--internal-port", "0", "--metrics-port", "0"
                     ).internal_listener is not None

    def test_from_the_environment_and_the_config_file(self, monkeypatch, tmp_path):
        monkeypatch.setenv("REALTIME_INTERNAL_PORT", "9001")
        assert parse().internal_listener[0] == "tcp:port=9001:interface=127.0.0.1:backlog=1024"
        assert parse("--internal-port", "9002").internal_listener[0].startswith(
            "tcp:port=9002:")  # the command line wins
        monkeypatch.delenv("REALTIME_INTERNAL_PORT")
        toml = tmp_path / "realtime.toml"
        toml.write_text('internal-port = "tcp:9003:interface=127.0.0.1"\n')
        assert parse("--config", str(toml)).internal_listener[0] == (
            "tcp:9003:interface=127.0.0.1:backlog=1024")
        toml.write_text("internal_port = 9004\n")
        assert parse("--config", str(toml)).internal_listener[0].startswith("tcp:port=9004:")

    def test_an_inherited_socket_is_compared_by_what_it_is_bound_to(self, monkeypatch):
        """``--fd`` and ``systemd:`` sockets: the address the socket has, and one socket
        named twice (two adoptions of one socket would both accept its connections)."""
        import twisted.internet.endpoints as endpoints

        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            sock.listen()
            fd, port = sock.fileno(), sock.getsockname()[1]
            monkeypatch.setattr(endpoints._SystemdParser, "_sddaemon",
                                endpoints.ListenFDs([fd], ["web"]))
            mine = "(a listener of its own: another port or interface)"
            assert error("--fd", str(fd), "--internal-port", str(port)) == (
                f"--internal-port {port}: the same address as --fd {fd} {mine}")
            assert error("--port", "systemd:domain=INET:index=0",
                         "--internal-port", "systemd:domain=INET:name=web") == (
                "--internal-port systemd:domain=INET:name=web: the same address as --port "
                f"systemd:domain=INET:index=0 {mine}")
            assert error("--fd", str(fd), "--internal-port", "systemd:domain=INET:index=0") == (
                f"--internal-port systemd:domain=INET:index=0: the same address as --fd {fd} "
                f"{mine}")
            # Another port of the same interface is another listener.
            assert parse("--fd", str(fd), "--internal-port", "0").internal_listener is not None
            assert sock.fileno() == fd  # still ours: only looked at

    def test_check_names_it(self, capsys):
        with pytest.raises(SystemExit) as done:
            parse("--port", "8001", "--internal-port", "9000", "--check")
        assert done.value.code == 0
        assert capsys.readouterr().out == (
            f"realtime: configuration OK: {BENCH_APP} on tcp:port=8001:interface=127.0.0.1:"
            "backlog=1024 (internal: tcp:port=9000:interface=127.0.0.1:backlog=1024), "
            "layer memory\n")


# Every start-up error, with its exact message.
ERRORS = [
    (["--ping-interval", "abc"], "--ping-interval: expected a number of seconds, got 'abc'"),
    (["--ping-timeout", "nan"], "--ping-timeout: expected a number of seconds, got 'nan'"),
    (["--shutdown-timeout", "inf"],
     "--shutdown-timeout: expected a number of seconds, got 'inf'"),
    (["--websocket-connect-timeout", "-1"],
     "--websocket-connect-timeout: must not be negative, got '-1'"),
    (["--websocket-timeout", "-2"], "--websocket-timeout: must not be negative, got '-2'"),
    (["--broadcast-delay", "1.5"], "--broadcast-delay: must be at most 1 second, got '1.5'"),
    (["--broadcast-delay", "-0.1"], "--broadcast-delay: must not be negative, got '-0.1'"),
    (["--broadcast-delay", "5ms"],
     "--broadcast-delay: expected a number of seconds, got '5ms'"),
    (["--compression-level", "0"], "--compression-level: must be at least 1, got '0'"),
    (["--compression-level", "10"],
     "--compression-level: must be between 1 and 9, got '10'"),
    (["--compression-level", "fast"],
     "--compression-level: expected a whole number, got 'fast'"),
    (["--compression-min-size", "-1"],
     "--compression-min-size: must be at least 0, got '-1'"),
    (["--max-message-size", "big"],
     "--max-message-size: expected a size in bytes (e.g. 1048576, 64KiB, 1MiB), got 'big'"),
    (["--max-frame-size", "0"], "--max-frame-size: must be at least 1 byte, got '0'"),
    (["--max-inflight", "0"], "--max-inflight: must be at least 1, got '0'"),
    (["--max-inflight", "1.5"], "--max-inflight: expected a whole number, got '1.5'"),
    (["--max-connections", "-1"], "--max-connections: must be at least 0, got '-1'"),
    (["--root-path", "ws"], "--root-path: must start with '/', got 'ws'"),
    (["--health-path", "healthz"], "--health-path: must start with '/', got 'healthz'"),
    (["--ready-path", "readyz"], "--ready-path: must start with '/', got 'readyz'"),
    (["-b", ""], "-b/--bind: expected a host, got an empty value"),
    (["-b", "[]", "--port", "80"], "-b/--bind: expected a host, got an empty value"),
    (["--port", "99999"], "--port: 99999 is not a port number (0-65535)"),
    (["--port", "bogus:1"], "--port 'bogus:1': Unknown endpoint type: 'bogus'"),
    (["--port", "²"], "--port '²': Unknown endpoint type: '²'"),
    (["--port", "tcp:0:backlog=abc"],
     "--port 'tcp:0:backlog=abc': invalid literal for int() with base 10: 'abc'"),
    (["--port", "fd:3"], "--port 'fd:3': 'fd:' is not an endpoint here; use --fd N or systemd:"),
    (["--port", "fd:fileno=3"],
     "--port 'fd:fileno=3': 'fd:' is not an endpoint here; use --fd N or systemd:"),
    (["--port", "ssl:0:privateKey=/nonexistent/key.pem:certKey=/nonexistent/cert.pem"],
     "--port 'ssl:0:privateKey=/nonexistent/key.pem:certKey=/nonexistent/cert.pem': "
     "No such file or directory: /nonexistent/cert.pem"),
    (["--internal-port", "70000"], "--internal-port: 70000 is not a port number (0-65535)"),
    (["--metrics-port", "70000"], "--metrics-port: 70000 is not a port number (0-65535)"),
    (["--internal-port", "bogus:1"], "--internal-port 'bogus:1': Unknown endpoint type: 'bogus'"),
    (["--internal-port", "fd:3"], "--internal-port 'fd:3': 'fd:' is not an endpoint here; give "
     "a port or a description (tcp:, ssl:, unix:, systemd:)"),
    (["--internal-port", "ssl:0:privateKey=/nonexistent/key.pem:certKey=/nonexistent/c.pem"],
     "--internal-port 'ssl:0:privateKey=/nonexistent/key.pem:certKey=/nonexistent/c.pem': "
     "No such file or directory: /nonexistent/c.pem"),
    (["--port", "8000", "--internal-port", "8000"],
     "--internal-port 8000: the same address as --port tcp:port=8000:interface=127.0.0.1:"
     "backlog=1024 (a listener of its own: another port or interface)"),
    (["--port", "tcp:8000", "--internal-port", "tcp:8000:interface=10.0.0.5"],
     "--internal-port tcp:8000:interface=10.0.0.5: the same address as --port "
     "tcp:8000:backlog=1024 (a listener of its own: another port or interface)"),
    # Another spelling of the same address is the same address: under --workers the kernel
    # would put both SO_REUSEPORT groups in one and spread each port's connections over both.
    (["-b", "localhost", "--port", "8000", "--internal-port", "8000"],
     "--internal-port 8000: the same address as --port tcp:port=8000:interface=localhost:"
     "backlog=1024 (a listener of its own: another port or interface)"),
    (["--port", "tcp:8000:interface=127.0.0.1", "--internal-port", "tcp:8000:interface=127.1"],
     "--internal-port tcp:8000:interface=127.1: the same address as --port tcp:8000:"
     "interface=127.0.0.1:backlog=1024 (a listener of its own: another port or interface)"),
    (["--port", "tcp6:8000:interface=\\:\\:1",
      "--internal-port", "tcp6:8000:interface=0\\:0\\:\\:1"],
     "--internal-port tcp6:8000:interface=0\\:0\\:\\:1: the same address as --port "
     "tcp6:8000:interface=\\:\\:1:backlog=1024 (a listener of its own: another port or "
     "interface)"),
    (["--port", "tcp:8000:interface=127.0.0.1",
      "--internal-port", "tcp6:8000:interface=\\:\\:ffff\\:127.0.0.1"],
     "--internal-port tcp6:8000:interface=\\:\\:ffff\\:127.0.0.1: the same address as "
     "--port tcp:8000:interface=127.0.0.1:backlog=1024 (a listener of its own: another port "
     "or interface)"),
    (["-u", "/run/realtime-test/web.sock", "--internal-port",
      "unix:/run/realtime-test/../realtime-test/web.sock"],
     "--internal-port unix:/run/realtime-test/../realtime-test/web.sock: the same address as "
     "--port unix:/run/realtime-test/web.sock (a listener of its own: another port or "
     "interface)"),
    (["--metrics-port", "9100", "--internal-port", "tcp:9100:interface=127.0.0.1"],
     "--internal-port tcp:9100:interface=127.0.0.1: the same address as --metrics-port 9100 "
     "(a listener of its own: another port or interface)"),
    (["--health-path", "", "--ready-path", "", "--internal-port", "9000"],
     "--internal-port: it would serve nothing (no --health-path nor --ready-path, no /metrics "
     "there, no --api-key)"),
    (["--fd", "x"], "--fd: expected a whole number, got 'x'"),
    (["--fd", "-1"], "--fd: must be at least 0, got '-1'"),
    (["--fd", "987"], "--fd 987: file descriptor 987 is not a socket (Bad file descriptor)"),
    (["-t", "soon"], "--http-timeout: expected a number of seconds, got 'soon'"),
    (["--http-timeout", "-1"], "--http-timeout: must not be negative, got '-1'"),
    (["--proxy-headers-host", "X-Real-IP"], "--proxy-headers-host: needs --proxy-headers"),
    (["--proxy-headers-port", "X-Real-Port"], "--proxy-headers-port: needs --proxy-headers"),
    (["--proxy-headers", "--proxy-headers-host", "X Real IP"],
     "--proxy-headers-host: expected an HTTP header name, got 'X Real IP'"),
    (["--proxy-headers", "--proxy-headers-port", "X-Port:"],
     "--proxy-headers-port: expected an HTTP header name, got 'X-Port:'"),
    # a request header whose name holds "_" never reaches a scope (CVE-2015-0219): never read
    (["--proxy-headers", "--proxy-headers-host", "X_Real_IP"],
     "--proxy-headers-host: 'X_Real_IP' holds '_': request headers so named are left out "
     "(as Daphne's scopes, CVE-2015-0219), so it would never be read; name it with '-'"),
    (["--proxy-headers", "--proxy-headers-port", "X_Port"],
     "--proxy-headers-port: 'X_Port' holds '_': request headers so named are left out "
     "(as Daphne's scopes, CVE-2015-0219), so it would never be read; name it with '-'"),
    (["--root-path-header", "Daphne-Root-Path"], "--root-path-header: needs --proxy-headers"),
    (["--proxy-headers", "--root-path-header", "Root Path"],
     "--root-path-header: expected an HTTP header name, got 'Root Path'"),
    (["--proxy-headers", "--root-path-header", "Daphne_Root_Path"],
     "--root-path-header: 'Daphne_Root_Path' holds '_': request headers so named are left "
     "out (as Daphne's scopes, CVE-2015-0219), so it would never be read; name it with '-'"),
    (["-s", "edge\r\nX-Injected: 1"],
     "--server-name: CR, LF and NUL are not allowed, got 'edge\\r\\nX-Injected: 1'"),
    (["--server-name", "名前"], "--server-name: expected latin-1 text, got '名前'"),
    (["-v", "4"], "--verbosity: must be between 0 and 3, got '4'"),
    (["--gc-threshold", "-1"], "--gc-threshold: must be at least 0, got '-1'"),
    (["--gc-threshold", "lots"], "--gc-threshold: expected a whole number, got 'lots'"),
    (["--verbosity", "loud"], "--verbosity: expected a whole number, got 'loud'"),
    (["--bogus"], "option --bogus not recognized"),
    (["--port"], "option --port requires argument"),
]


@pytest.mark.parametrize(("args", "message"), ERRORS, ids=[" ".join(a) for a, _ in ERRORS])
def test_startup_error(args, message):
    assert error(*args) == message


def test_systemd_without_sockets(monkeypatch):
    import twisted.internet.endpoints as endpoints

    # Twisted read LISTEN_* at import; make sure this process has none.
    monkeypatch.setattr(endpoints._SystemdParser, "_sddaemon",
                        endpoints.ListenFDs.fromEnvironment(environ={}))
    for desc in ("systemd:domain=INET:index=0", "systemd:domain=INET:name=realtime"):
        assert error("--port", desc).startswith(
            f"--port '{desc}': no such socket passed by systemd (LISTEN_FDS="
        )


def test_app_required():
    assert error(app=False).startswith("--app is required (MODULE:ATTRIBUTE")


@pytest.mark.parametrize(("spec", "message"), [
    ("nosuch_module_xyz:app",
     "--app 'nosuch_module_xyz:app': cannot import module 'nosuch_module_xyz': "
     "No module named 'nosuch_module_xyz'"),
    ("realtime.examples.bench:nope",
     "--app 'realtime.examples.bench:nope': module 'realtime.examples.bench' "
     "has no attribute 'nope'"),
    ("realtime.examples.bench", "--app: expected MODULE:ATTRIBUTE, got 'realtime.examples.bench'"),
    (":application", "--app: expected MODULE:ATTRIBUTE, got ':application'"),
    ("os:", "--app: expected MODULE:ATTRIBUTE, got 'os:'"),
    ("os:sep", "--app 'os:sep': 'sep' is not callable"),
])
def test_bad_app(spec, message):
    assert error("--app", spec, app=False) == message


def test_app_module_that_raises(tmp_path, monkeypatch):
    (tmp_path / "broken_app_mod.py").write_text("raise RuntimeError('boom')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert error("--app", "broken_app_mod:app", app=False) == (
        "--app 'broken_app_mod:app': importing module 'broken_app_mod' raised "
        "RuntimeError: boom"
    )
    assert "broken_app_mod" not in sys.modules


def test_dotted_attribute(tmp_path, monkeypatch):
    (tmp_path / "dotted_app_mod.py").write_text(
        "class Holder:\n    @staticmethod\n    def app(scope, receive, send):\n        pass\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    mod_app = load_application("dotted_app_mod:Holder.app")
    assert mod_app is sys.modules["dotted_app_mod"].Holder.app


def test_an_application_in_the_current_directory_is_found(tmp_path, monkeypatch):
    """``twistd``/``realtime`` do not put the current directory on ``sys.path``; ``--app``
    looks there last, so it works from the project's directory."""
    package = tmp_path / "cwd_app_pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "consumers.py").write_text("def application(scope, receive, send):\n    pass\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", ".", str(tmp_path))])
    app = load_application("cwd_app_pkg.consumers:application")
    assert app is sys.modules["cwd_app_pkg.consumers"].application
    assert sys.path[-1] == str(tmp_path)  # last: installed packages win
    # A module missing inside a package that was found is still the error it was.
    (package / "broken.py").write_text("import cwd_app_missing_dependency\n")
    assert error("--app", "cwd_app_pkg.broken:application", app=False) == (
        "--app 'cwd_app_pkg.broken:application': cannot import module 'cwd_app_pkg.broken': "
        "No module named 'cwd_app_missing_dependency'")


def test_an_application_nowhere_names_the_module(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    assert error("--app", "cwd_app_nowhere.consumers:application", app=False) == (
        "--app 'cwd_app_nowhere.consumers:application': cannot import module "
        "'cwd_app_nowhere.consumers': No module named 'cwd_app_nowhere'")


class TestEnvironment:
    def test_bad_value_names_the_option(self, monkeypatch):
        monkeypatch.setenv("REALTIME_PING_INTERVAL", "abc")
        assert error() == "--ping-interval: expected a number of seconds, got 'abc'"

    def test_compression_from_environment(self, monkeypatch):
        assert parse().config.compression is False
        monkeypatch.setenv("REALTIME_COMPRESSION", "1")
        monkeypatch.setenv("REALTIME_COMPRESSION_LEVEL", "6")
        config = parse().config
        assert (config.compression, config.compression_level, config.compression_min_size) == (
            True, 6, 128)
        config = parse("--compression-min-size", "0", "--compression-level", "9").config
        assert (config.compression_level, config.compression_min_size) == (9, 0)

    def test_http2_is_on_unless_no_http2(self, monkeypatch):
        assert parse().config.http2 is True
        assert parse("--no-http2").config.http2 is False
        monkeypatch.setenv("REALTIME_NO_HTTP2", "yes")
        assert parse().config.http2 is False
        monkeypatch.setenv("REALTIME_NO_HTTP2", "maybe")
        assert error() == "REALTIME_NO_HTTP2: expected 1/true/yes or 0/false/no, got 'maybe'"

    def test_lifespan_is_auto_unless_said(self, monkeypatch):
        assert parse().config.lifespan == "auto"
        assert parse("--lifespan", "off").config.lifespan == "off"
        monkeypatch.setenv("REALTIME_LIFESPAN", "on")
        assert parse().config.lifespan == "on"
        assert parse("--lifespan", "auto").config.lifespan == "auto"  # the command line wins
        monkeypatch.setenv("REALTIME_LIFESPAN", "always")
        assert error() == "--lifespan: expected one of auto, on, off, got 'always'"

    def test_value(self, monkeypatch):
        monkeypatch.setenv("REALTIME_MAX_MESSAGE_SIZE", "64KiB")
        monkeypatch.setenv("REALTIME_WEBSOCKET_CONNECT_TIMEOUT", "2.5")
        monkeypatch.setenv("REALTIME_BROADCAST_DELAY", "0.02")
        config = parse().config
        assert config.max_message_size == 65536
        assert config.connect_timeout == 2.5
        assert config.broadcast_delay == 0.02

    def test_app(self, monkeypatch):
        monkeypatch.setenv("REALTIME_APP", BENCH_APP)
        options = Options()
        options.parseOptions([])
        assert options.listeners == [(LOOPBACK_8000, LOOPBACK_8000)]

    def test_repeatable_port_is_space_separated(self, monkeypatch, tmp_path):
        path = str(tmp_path / "x.sock")
        monkeypatch.setenv("REALTIME_PORT", f"0 unix:{path}")
        assert descriptions(parse()) == [
            "tcp:port=0:interface=127.0.0.1:backlog=1024",
            f"unix:{path}",
        ]

    def test_command_line_wins(self, monkeypatch):
        monkeypatch.setenv("REALTIME_PING_INTERVAL", "abc")
        monkeypatch.setenv("REALTIME_PORT", "1234 5678")
        monkeypatch.setenv("REALTIME_APP", "nosuch_module_xyz:app")
        options = parse("--ping-interval", "7", "--port", "0")
        assert options.config.ping_interval == 7
        assert descriptions(options) == ["tcp:port=0:interface=127.0.0.1:backlog=1024"]

    def test_bind_from_environment(self, monkeypatch):
        monkeypatch.setenv("REALTIME_BIND", "127.0.0.3")
        assert descriptions(parse("--port", "0")) == [
            "tcp:port=0:interface=127.0.0.3:backlog=1024"
        ]

    def test_bad_port_from_environment(self, monkeypatch):
        monkeypatch.setenv("REALTIME_PORT", "0 fd:3")
        assert error() == "--port 'fd:3': 'fd:' is not an endpoint here; use --fd N or systemd:"


def assert_documents_every_option(text: str) -> None:
    """Every parameter (``--name=``), repeatable option and flag (``--name``) is listed."""
    parameters = [p[0] for p in Options.optParameters] + list(Options._repeatable)
    flags = [f[0] for f in getattr(Options, "optFlags", [])]
    assert len(parameters) >= 17
    for name in parameters:
        assert f"--{name}=" in text, name
    for name in flags:
        assert re.search(rf"--{re.escape(name)}\b", text), name


def test_help_documents_every_option(capsys):
    with pytest.raises(SystemExit) as info:
        Options().parseOptions(["--help"])
    assert info.value.code in (None, 0)
    text = capsys.readouterr().out
    assert_documents_every_option(text)
    for short in ("-b", "-u", "-p"):
        assert f"  {short}, --" in text
    assert "REALTIME_<NAME>" in text


# --- the real command line ------------------------------------------------------------


def assert_one_line_error(result, *fragments: str) -> str:
    """Exactly one ``realtime: error:`` line, on stderr, nothing else; rc != 0."""
    assert result.returncode != 0, result
    assert result.stdout == "", result
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("realtime: error: ")
    for fragment in fragments:
        assert fragment in lines[0]
    return lines[0]


def test_cli_bad_value():
    result = run(twistd(*APP, "--ping-interval", "abc"))
    assert result.returncode == 1
    assert assert_one_line_error(result) == (
        "realtime: error: --ping-interval: expected a number of seconds, got 'abc'"
    )


def test_cli_bad_value_from_environment():
    result = run(twistd(*APP), env={"REALTIME_MAX_INFLIGHT": "lots"})
    assert assert_one_line_error(result) == (
        "realtime: error: --max-inflight: expected a whole number, got 'lots'"
    )


def test_cli_unimportable_app():
    result = run(twistd("--app", "nosuch_module_xyz.sub:application"))
    assert_one_line_error(result, "--app", "cannot import module 'nosuch_module_xyz.sub'")


def test_cli_bad_port():
    result = run(twistd(*APP, "--port", "bogus:1"))
    assert_one_line_error(result, "--port 'bogus:1'", "Unknown endpoint type")


def test_cli_fd_description():
    result = run(twistd(*APP, "--port", "fd:3"))
    assert_one_line_error(result, "'fd:' is not an endpoint here; use --fd N or systemd:")


def test_cli_unknown_option():
    result = run(twistd(*APP, "--nope"))
    assert_one_line_error(result, "option --nope not recognized")


@pytest.mark.parametrize("what", ["missing", "garbage", "mismatched"])
def test_cli_unreadable_certificate(tmp_path, what):
    cert, key = self_signed(tmp_path)
    if what == "missing":
        key = tmp_path / "missing.pem"
        fragment = f"No such file or directory: {key}"
    elif what == "garbage":
        cert.write_text("not a certificate\n")
        fragment = "cannot load certificate or key"
    else:
        other = tmp_path / "other"
        other.mkdir()
        cert, _ = self_signed(other)
        fragment = "Certificate public and private keys do not match"
    desc = f"ssl:0:interface=127.0.0.1:privateKey={key}:certKey={cert}"
    assert_one_line_error(run(twistd(*APP, "--port", desc)), f"--port '{desc}'", fragment)


def test_cli_port_in_use():
    """The port is bound after logging starts: the one line is a log line (stdout)."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run(twistd(*APP, "--port", str(port)))
    assert result.returncode == 1, result
    errors = [line for line in result.output.splitlines() if "realtime: error:" in line]
    assert len(errors) == 1, result.output
    assert errors[0].endswith(
        f"realtime: error: cannot listen on tcp:port={port}:interface=127.0.0.1:"
        "backlog=1024: Address already in use"
    )
    assert "Traceback" not in result.output
    assert "listening on" not in result.output


def test_cli_internal_port_in_use_names_the_option():
    """The main port listens, the internal one cannot: one line naming --internal-port."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run(twistd(*APP, "--port", "0", "--internal-port", str(port)))
    assert result.returncode == 1, result
    errors = [line for line in result.output.splitlines() if "realtime: error:" in line]
    assert len(errors) == 1, result.output
    assert errors[0].endswith(
        f"realtime: error: --internal-port: cannot listen on tcp:port={port}:"
        "interface=127.0.0.1:backlog=1024: Address already in use")
    assert "Traceback" not in result.output


def test_cli_help_documents_every_option():
    result = run(twistd("--help"))
    assert result.returncode == 0, result
    assert_documents_every_option(result.stdout)


@pytest.mark.parametrize("layer", ["memory", "redis://127.0.0.1:1/0"])
def test_a_module_level_layer_handle_is_the_services_layer(tmp_path, monkeypatch, layer):
    """Code that takes ``get_channel_layer()`` when the application is imported (a module
    global, as Channels apps do) gets the ``--layer`` layer, not a private in-memory one whose
    groups no consumer is in."""
    from realtime.layers.base import unguarded
    from realtime.worker import Options as WorkerOptions

    for n, options_class in enumerate((Options, WorkerOptions)):
        if options_class is WorkerOptions and layer == "memory":
            continue  # refused for workers (tested with the workers)
        name = f"layer_handle_app_{n}_{layer[:5]}"
        (tmp_path / f"{name}.py").write_text(
            "from realtime import ChannelNameRouter\n"
            "from realtime.layers import get_channel_layer\n"
            "LAYER = get_channel_layer()\n"
            "application = ChannelNameRouter({})\n"
        )
        monkeypatch.syspath_prepend(str(tmp_path))
        options = options_class()
        args = ["--app", f"{name}:application", "--layer", layer]
        options.parseOptions(args + (["jobs"] if options_class is WorkerOptions else []))
        # (guarded when taken before the reactor runs: tests/e2e/test_layer_global.py)
        assert unguarded(sys.modules[name].LAYER) is options.layer


def test_daphne_spellings_and_endpoint_option_carry_over():
    """A Daphne command line's ``--websocket_timeout``/``--websocket_connect_timeout`` and
    ``-e/--endpoint`` work unchanged."""
    options = parse("--websocket_timeout", "60", "--websocket_connect_timeout=3",
                    "--application_close_timeout", "4",
                    "-e", "tcp:0:interface=127.0.0.1", "--endpoint", "unix:/tmp/rt.sock")
    assert options.config.websocket_timeout == 60
    assert options.config.connect_timeout == 3
    assert options.config.application_close_timeout == 4
    assert options["port"] == ["tcp:0:interface=127.0.0.1", "unix:/tmp/rt.sock"]
    assert error("--websocket_timeout", "soon") == (
        "--websocket-timeout: expected a number of seconds, got 'soon'")


def test_daphne_options_t_s_proxy_header_names_and_v():
    config = parse("-t", "2.5", "-s", "edge/2", "--proxy-headers",
                   "--proxy-headers-host", "X-Real-IP", "--proxy-headers-port",
                   "X-Real-Port").config
    assert config.http_response_timeout == 2.5
    assert config.server_header == "edge/2"
    assert (config.proxy_headers_host, config.proxy_headers_port) == ("X-Real-IP",
                                                                      "X-Real-Port")
    assert parse("--http-timeout=0").config.http_response_timeout == 0  # none, as Daphne
    assert parse("--server-name", "café").config.server_header == "café"  # latin-1
    assert parse("-s", "edge", "--no-server-name").config.server_header == ""
    assert [parse("-v", str(n)).verbosity for n in range(4)] == [0, 1, 2, 3]


def test_daphne_options_from_the_environment(monkeypatch):
    monkeypatch.setenv("REALTIME_HTTP_TIMEOUT", "3")
    monkeypatch.setenv("REALTIME_SERVER_NAME", "edge")
    monkeypatch.setenv("REALTIME_PROXY_HEADERS", "1")
    monkeypatch.setenv("REALTIME_PROXY_HEADERS_HOST", "X-Real-IP")
    monkeypatch.setenv("REALTIME_VERBOSITY", "0")
    options = parse()
    assert options.config.http_response_timeout == 3
    assert options.config.server_header == "edge"
    assert options.config.proxy_headers_host == "X-Real-IP"
    assert options.verbosity == 0
    assert parse("-v", "2", "-s", "other").verbosity == 2  # the command line wins
    monkeypatch.setenv("REALTIME_NO_SERVER_NAME", "yes")
    assert parse().config.server_header == ""
    monkeypatch.setenv("REALTIME_PROXY_HEADERS", "0")
    assert error() == "--proxy-headers-host: needs --proxy-headers"


def test_cli_proxy_header_names_need_proxy_headers():
    result = run(twistd(*APP, "--proxy-headers-host", "X-Real-IP"))
    assert result.returncode == 1
    assert assert_one_line_error(result) == (
        "realtime: error: --proxy-headers-host: needs --proxy-headers")


def test_application_close_timeout():
    assert parse().config.application_close_timeout == 10  # Daphne's default
    assert parse("--application-close-timeout", "0.5").config.application_close_timeout == 0.5
    assert error("--application-close-timeout", "-1") == (
        "--application-close-timeout: must not be negative, got '-1'")


def test_a_raw_asgi_app_is_served_through_asgiapp(tmp_path, monkeypatch):
    """``--app myproject.asgi:application`` where that is Django's ``get_asgi_application()``
    (or any ASGI-3 callable): served through ``realtime.asgi.AsgiApp``."""
    from realtime.asgi import AsgiApp
    from realtime.tap import load_application

    (tmp_path / "asgi_only_app.py").write_text(
        "async def application(scope, receive, send):\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    loaded = load_application("asgi_only_app:application")
    assert isinstance(loaded, AsgiApp)
    assert loaded.app.__module__ == "asgi_only_app"


@pytest.mark.parametrize(("given", "root"), [("/ws", "/ws"), ("/ws/", "/ws"), ("/", ""),
                                             ("/a/b//", "/a/b")])
def test_root_path_takes_a_trailing_slash_as_daphne_does(given, root):
    assert parse("--root-path", given).config.root_path == root


def test_history_rules_from_the_command_line_and_the_environment(monkeypatch):
    from realtime.worker import Options as WorkerOptions

    options = parse("--history", "room.*=100:300", "--history", "feed=1:0.5")
    assert [(r.pattern, r.size, r.ttl) for r in options.layer.history.rules] == [
        ("room.*", 100, 300.0), ("feed", 1, 0.5)]
    assert options.layer.history.match("room.a").size == 100
    assert error("--history", "room.*=100") == (
        "--history: expected PATTERN=SIZE:TTL (e.g. 'room.*=100:300'), got 'room.*=100'")
    assert error("--history", "room.*=0:300").startswith("--history: history size must be")
    monkeypatch.setenv("REALTIME_HISTORY", "a.*=2:3 b=4:5")
    assert [r.pattern for r in parse().layer.history.rules] == ["a.*", "b"]
    assert [r.pattern for r in parse("--history", "c=1:1").layer.history.rules] == ["c"]
    # Workers take the same rules (their group_send to such a group is kept too).
    worker = WorkerOptions()
    worker.parseOptions(["--app", "realtime.examples.bench:application", "--layer",
                         "redis://127.0.0.1:1/0", "--history", "room.*=7:60", "jobs"])
    assert [(r.pattern, r.size) for r in worker.layer.history.rules] == [("room.*", 7)]
    worker = WorkerOptions()
    with pytest.raises(StartupError, match="--history: expected PATTERN=SIZE:TTL"):
        worker.parseOptions(["--app", "realtime.examples.bench:application", "--layer",
                             "redis://127.0.0.1:1/0", "--history", "nope", "jobs"])
