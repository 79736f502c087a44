#!/usr/bin/env bash
# The test command (README: "bash tests/run.sh"): installs what the tests need on a fresh
# machine, then runs the linters and the whole suite. CI (.ci/run) calls exactly this.
# Extra arguments go to pytest (e.g. bash tests/run.sh -k routing -x).
set -euo pipefail
cd "$(dirname "$0")/.."

# apt-get install, after one apt-get update per run at most (shared by every install below);
# through sudo when not run as root.
as_root=()
if [[ $(id -u) -ne 0 ]] && command -v sudo >/dev/null; then
    as_root=(sudo)
fi
apt_updated=
apt_install() {
    if [[ -z $apt_updated ]]; then
        "${as_root[@]}" apt-get update || return
        apt_updated=1
    fi
    "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y "$@"
}

# Debian tools the end-to-end tests use (tests/e2e/test_launch.py): systemd-socket-activate
# (package systemd), ss (iproute2), and venv/ensurepip for the plugin-discovery virtualenvs.
missing=()
command -v systemd-socket-activate >/dev/null || missing+=(systemd)
command -v ss >/dev/null || missing+=(iproute2)
python3 -c "import ensurepip, venv" 2>/dev/null || missing+=(python3-venv)
if ((${#missing[@]})); then
    apt_install --no-install-recommends "${missing[@]}"
fi

export PIP_DISABLE_PIP_VERSION_CHECK=1
# The Redis layer's tests run a real redis-server (under CI=true a missing one is a failure).
command -v redis-server >/dev/null || apt_install redis-server
# The browser tests (tests/e2e/test_browser_chat.py) drive Debian's Chromium at
# /usr/bin/chromium through Playwright; no browser is ever downloaded (never
# "playwright install"). Under CI=true a missing one is a failure.
command -v chromium >/dev/null || apt_install chromium
# centrifuge-js (npm "centrifuge", pinned) for the realtime.pubsub browser tests
# (tests/e2e/test_browser_pubsub.py) and socket.io-client (pinned) for realtime.socketio's
# (tests/test_socketio.py) with socket.io-msgpack-parser (pinned; tests/test_socketio_parity.py)
# and the official Socket.IO Admin UI (@socket.io/admin-ui, pinned: its built ui/dist, for
# tests/e2e/test_browser_socketio_admin.py), installed (never vendored) into tests/.node, which git ignores;
# skipped when those versions are already there. One npm call for all: an install with
# --no-save prunes the packages it was not given. A failed install does not stop the run:
# those tests skip without the packages, and fail under CI=true.
CENTRIFUGE_JS=5.7.4
SOCKET_IO_CLIENT=4.8.4
SOCKET_IO_MSGPACK_PARSER=3.0.2
SOCKET_IO_ADMIN_UI=0.5.1
installed_js() {
    python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["version"])' \
        "tests/.node/node_modules/$1/package.json" 2>/dev/null || true
}
if [[ $(installed_js centrifuge) != "$CENTRIFUGE_JS" \
        || $(installed_js socket.io-client) != "$SOCKET_IO_CLIENT"
        || $(installed_js socket.io-msgpack-parser) != "$SOCKET_IO_MSGPACK_PARSER"
        || $(installed_js @socket.io/admin-ui) != "$SOCKET_IO_ADMIN_UI" ]]; then
    command -v npm >/dev/null || apt_install --no-install-recommends npm \
        || echo "tests/run.sh: could not install npm" >&2
    if command -v npm >/dev/null; then
        npm install --prefix tests/.node --no-save --no-audit --no-fund --ignore-scripts \
            --no-package-lock --loglevel=error "centrifuge@$CENTRIFUGE_JS" \
            "socket.io-client@$SOCKET_IO_CLIENT" \
            "socket.io-msgpack-parser@$SOCKET_IO_MSGPACK_PARSER" \
            "@socket.io/admin-ui@$SOCKET_IO_ADMIN_UI" \
            || echo "tests/run.sh: npm could not install centrifuge@$CENTRIFUGE_JS," \
                "socket.io-client@$SOCKET_IO_CLIENT," \
                "socket.io-msgpack-parser@$SOCKET_IO_MSGPACK_PARSER and" \
                "@socket.io/admin-ui@$SOCKET_IO_ADMIN_UI" >&2
    fi
fi
# A C compiler and Python's headers build realtime._sendeach, the fan-out's C loop
# (setup.py; optional for users, required here: tests/test_fanout.py under CI=true).
command -v cc >/dev/null || apt_install --no-install-recommends gcc libc6-dev
python3 -c 'import os, sysconfig; os.stat(sysconfig.get_path("include") + "/Python.h")' \
    2>/dev/null || apt_install --no-install-recommends python3-dev
python3 -m pip install --quiet -e '.[test]' --config-settings editable_mode=strict
# Regenerate twistd's plugin cache now, so no test pays for (or races on) the first scan.
python3 -c "from twisted.plugin import IPlugin, getPlugins; list(getPlugins(IPlugin))"

python3 -m ruff check realtime tests benchmarks twisted
python3 -m mypy
# Two workers (pytest-xdist): tests/e2e/ in one, the rest in the other, side by side
# (tests/conftest.py); "-n 0" among the arguments runs everything in this process.
python3 -m pytest -n 2 --dist loadgroup "$@"
