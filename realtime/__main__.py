"""``python -m realtime`` and the ``realtime`` console script: ``twistd -n realtime`` with the
platform's default reactor (or ``--reactor NAME``, e.g. ``asyncio`` for applications that
await asyncio code) and no pidfile (what a container or systemd wants)."""

from __future__ import annotations

import sys


def _take_reactor(args: list[str]) -> tuple[str | None, list[str]]:
    """``--reactor NAME`` / ``--reactor=NAME`` out of ``args`` (twistd's own option)."""
    name, rest = None, []
    items = iter(args)
    for arg in items:
        if arg.startswith("--reactor="):
            name = arg.partition("=")[2]
        elif arg == "--reactor":
            name = next(items, "")
        else:
            rest.append(arg)
    return name, rest


def main(argv: list[str] | None = None) -> None:
    name, args = _take_reactor(sys.argv[1:] if argv is None else argv)
    head = ["realtime", "--nodaemon", "--pidfile="]
    if name is None:
        from twisted.internet import default

        default.install()
    else:
        from twisted.application.reactors import getReactorTypes

        names = sorted(r.shortName for r in getReactorTypes())
        if name not in names:
            sys.stderr.write(f"realtime: error: --reactor: no reactor named {name!r} "
                             f"(choose from {', '.join(names)})\n")
            raise SystemExit(1)
        head.append(f"--reactor={name}")
    from twisted.scripts.twistd import run

    sys.argv = [*head, "realtime", *args]
    run()


if __name__ == "__main__":
    main()
