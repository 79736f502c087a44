"""``python -m realtime`` and the ``realtime`` console script: ``twistd -n realtime`` with the
platform's default reactor and no pidfile (what a container or systemd wants)."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> None:
    from twisted.internet import default

    default.install()
    from twisted.scripts.twistd import run

    args = sys.argv[1:] if argv is None else argv
    sys.argv = ["realtime", "--nodaemon", "--pidfile=", "realtime", *args]
    run()


if __name__ == "__main__":
    main()
