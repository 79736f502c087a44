"""``--config FILE`` (or ``REALTIME_CONFIG``): options from a TOML file, under the
environment and the command line; a bad file or key stops start-up with one line naming
it; a real ``twistd realtime --config`` serves what the file says."""

from __future__ import annotations

import urllib.request

import pytest

from realtime.config import StartupError
from realtime.tap import Options
from tests.e2e.support import REPO, start, twistd

BASE = ["--app", "realtime.examples.bench:application"]


def parsed(args, monkeypatch=None, env=None):
    if monkeypatch is not None:
        for name, value in (env or {}).items():
            monkeypatch.setenv(name, value)
    options = Options()
    options.parseOptions(args)
    return options


def test_the_file_fills_what_the_environment_and_the_command_line_leave(tmp_path,
                                                                        monkeypatch):
    config = tmp_path / "realtime.toml"
    config.write_text(
        'app = "realtime.examples.bench:application"\n'
        "ping-interval = 7\n"
        "ping_timeout = 12.5\n"  # Daphne's underscore spelling works too
        "metrics = true\n"
        'port = ["tcp:0:interface=127.0.0.1", "0"]\n'
        'history = "room.*=10:60"\n'
        "max-groups-per-connection = 5\n"
    )
    options = parsed(["--config", str(config)])
    assert options["ping-interval"] == "7" and options["ping-timeout"] == "12.5"
    assert options["metrics"] == 1
    assert options["port"] == ["tcp:0:interface=127.0.0.1", "0"]
    assert options["history"] == ["room.*=10:60"]
    assert options.layer.max_groups_per_connection == 5
    # The environment wins over the file, the command line over both.
    options = parsed([f"--config={config}"], monkeypatch, {"REALTIME_PING_INTERVAL": "8"})
    assert options["ping-interval"] == "8"
    options = parsed(["--config", str(config), "--ping-interval", "9", "--port", "0"])
    assert options["ping-interval"] == "9" and options["port"] == ["0"]
    # REALTIME_CONFIG names the file when the command line does not.
    options = parsed(BASE, monkeypatch, {"REALTIME_CONFIG": str(config)})
    assert options["ping-timeout"] == "12.5"


@pytest.mark.parametrize("spelling", ["--conf {}", "--confi={}"])
def test_an_abbreviated_config_option_reads_the_file(tmp_path, spelling):
    """getopt takes ``--conf FILE`` as ``--config FILE``: the file is read then too (it
    was named in the options and silently left unread)."""
    config = tmp_path / "realtime.toml"
    config.write_text('app = "realtime.examples.bench:application"\nping-interval = 7\n')
    args = spelling.format(config).split(" ")
    options = parsed(args)
    assert options["config"] == str(config) and options["ping-interval"] == "7"


@pytest.mark.parametrize(("text", "expected"), [
    ("ping-intervall = 7\n", "ping-intervall: no such option"),
    ("metrics = 1\n", "metrics: expected true or false, got 1"),
    ("ping-interval = true\n", "ping-interval: expected a string or a number, got True"),
    ("ping-interval = [1, 2]\n", "ping-interval: expected a string or a number"),
    ("port = [{a = 1}]\n", "port: expected a string or a list of strings"),
    ("[server]\nport = 1\n", "server: no such option"),
    ("ping-interval = \n", "not TOML: "),
    # Two spellings of one option: which one was meant is not guessed.
    ("ping-interval = 7\nping_interval = 9\n", "ping_interval: the same option as "
                                               "ping-interval"),
    ("max_send_buffer = 1\nmax-send-buffer = 2\n", "max-send-buffer: the same option as "
                                                   "max_send_buffer"),
])
def test_a_bad_file_stops_start_up_with_one_line_naming_it(tmp_path, text, expected):
    config = tmp_path / "bad.toml"
    config.write_text(text)
    with pytest.raises(StartupError) as error:
        parsed([*BASE, "--config", str(config)])
    message = str(error.value)
    assert message.startswith(f"realtime: error: --config {config}: "), message
    assert expected in message and "\n" not in message


def test_a_missing_file_is_named(tmp_path):
    with pytest.raises(StartupError) as error:
        parsed([*BASE, "--config", str(tmp_path / "none.toml")])
    assert str(error.value) == (f"realtime: error: --config {tmp_path / 'none.toml'}: "
                                "No such file or directory")


def test_a_server_runs_on_its_config_file(tmp_path):
    config = tmp_path / "realtime.toml"
    config.write_text('app = "realtime.examples.bench:application"\n'
                      'port = "tcp:0:interface=127.0.0.1"\n'
                      "metrics = true\n")
    with start(twistd("--config", str(config)), cwd=REPO) as server:
        url = server.ws_url("/metrics", scheme="http")
        with urllib.request.urlopen(url, timeout=5) as response:
            assert b"realtime_connections" in response.read()
        result = server.stop()
    assert result.returncode == 0, result.output


def test_check_validates_everything_and_serves_nothing(tmp_path):
    """``--check``: the options, the file and the application are checked, then exit 0
    with one line; anything wrong exits 1 with the line that says why."""
    from tests.e2e.support import run

    # A unix socket: a listener would make its file (a TCP port found free could be taken
    # by the other test worker's servers before it is looked at again).
    sock = tmp_path / "check.sock"
    config = tmp_path / "realtime.toml"
    config.write_text('app = "realtime.examples.bench:application"\n'
                      f'port = "unix:{sock}"\n')
    ok = run(twistd("--config", str(config), "--check"), cwd=REPO)
    assert ok.returncode == 0, ok
    assert ok.stdout == (f"realtime: configuration OK: realtime.examples.bench:application "
                         f"on unix:{sock}, layer memory\n")
    assert not sock.exists()  # it never listened
    for extra, expected in (
        (["--app", "realtime.examples.nope:application"], "cannot import module"),
        (["--workers", "2"], "--workers 2 needs a shared channel layer"),
        (["--reload", "--app", "realtime.examples.nope:application"],
         "cannot import module"),
    ):
        bad = run(twistd("--config", str(config), *extra, "--check"), cwd=REPO)
        assert bad.returncode == 1 and expected in bad.stderr, (extra, bad)
        assert bad.stdout == ""


def test_check_names_the_layer_without_its_password(capsys):
    """``--check``'s line names the layer as the log does: a password in the URL (which
    ends up in a CI log or the journal) is left out."""
    for url, named in (("redis://:s3cret@127.0.0.1:1/0", "redis://127.0.0.1:1/0"),
                       ("redis://user:s3cret@127.0.0.1:1/2", "redis://127.0.0.1:1/2"),
                       ("redis+sentinel://:s3cret@h1:1,h2:2/mymaster/0",
                        "sentinel h1:1,h2:2 master mymaster db 0"),
                       ("memory", "memory")):
        with pytest.raises(SystemExit) as exit_:
            parsed([*BASE, "--port", "0", "--layer", url, "--check"])
        assert exit_.value.code == 0
        out = capsys.readouterr().out
        assert out.endswith(f", layer {named}\n") and "s3cret" not in out, out


def test_namespaces_in_centrifugo_shape(tmp_path):
    """``[[namespaces]]`` tables, as a Centrifugo config has them, are ``--namespace``s;
    a value that cannot be an option's stops start-up naming the file and the table."""
    from realtime.settings import reset, settings

    config = tmp_path / "realtime.toml"
    config.write_text(
        'app = "realtime.pubsub:application"\n'
        "[[namespaces]]\n"
        'name = "chat"\n'
        "presence = true\n"
        "history_size = 10\n"
        'history_ttl = "5m"\n'
        "force_recovery = true\n"
        "[[namespaces]]\n"
        'name = ""\n'
        "allow_subscribe_for_anonymous = true\n"
    )
    try:
        parsed(["--config", str(config), "--port", "tcp:0:interface=127.0.0.1"])
        chat = settings.pubsub_namespaces["chat"]
        assert chat.presence and chat.force_recovery and chat.history_size == 10
        assert chat.history_ttl == 300.0 and not chat.allow_subscribe_for_client
        assert settings.pubsub_namespaces[""].allow_subscribe_for_anonymous
    finally:
        reset()
    config.write_text('app = "realtime.pubsub:application"\n'
                      '[[namespaces]]\nname = "chat"\nhistory_ttl = ["300s"]\n')
    with pytest.raises(StartupError, match=r"realtime.toml: namespaces: chat.history_ttl"):
        parsed(["--config", str(config)])
    config.write_text('app = "realtime.pubsub:application"\n'
                      '[[namespaces]]\npresence = true\n')
    with pytest.raises(StartupError, match=r"every \[\[namespaces\]\] table needs a name"):
        parsed(["--config", str(config)])
    config.write_text('app = "realtime.pubsub:application"\n'
                      '[[namespaces]]\nname = "chat"\npresense = true\n')
    with pytest.raises(StartupError, match=r"--namespace: namespace 'chat': no option "
                                           r"'presense'"):
        parsed(["--config", str(config), "--port", "tcp:0:interface=127.0.0.1"])


def test_the_contrib_pubsub_config_checks(tmp_path):
    """contrib/pubsub/realtime.toml, its key files pointed at real ones, passes ``--check``
    with the namespaces it declares (a Centrifugo user's starting point must work)."""
    from tests.e2e.support import run

    (tmp_path / "jwt.key").write_text("k" * 40 + "\n")
    (tmp_path / "api.keys").write_text("api-key-" + "a" * 32 + "\n")
    text = (REPO / "contrib" / "pubsub" / "realtime.toml").read_text()
    config = tmp_path / "realtime.toml"
    config.write_text(text.replace("/etc/realtime/", f"{tmp_path}/"))
    checked = run(twistd("--config", str(config), "--check"), cwd=REPO)
    assert checked.returncode == 0, checked
    assert "configuration OK: realtime.pubsub:application" in checked.stdout
    options = parsed(["--config", str(config)])
    from realtime.settings import reset, settings

    try:
        assert options["namespace"][0].startswith("chat:presence=true,")
        assert set(settings.pubsub_namespaces) == {"chat", "live", "personal", ""}
        assert settings.pubsub_namespaces["chat"].history_ttl == 300.0
        assert settings.pubsub_namespaces["live"].allowed_delta_types == ("fossil",)
    finally:
        reset()
