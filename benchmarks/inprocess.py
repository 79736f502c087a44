"""What the in-process step benchmarks share (``group_send_step.py``,
``pubsub_fanout.py``): their command line, the reader process's drain loop and the reactor
run of a ``measure(opts)`` coroutine."""

from __future__ import annotations

import argparse
import os
import select
import socket
import subprocess
import sys
from collections.abc import Callable, Coroutine
from typing import Any


async def start_reader(script: str, port: int, members: int, pin: bool,
                       refused: str) -> subprocess.Popen[str]:
    """The reader process (``script --reader PORT MEMBERS``) on the other core (``pin``),
    once it says its members are ready; ``SystemExit(refused)`` if it does not."""
    child = subprocess.Popen([sys.executable, script, "--reader", str(port), str(members)],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    if pin:
        os.sched_setaffinity(0, {0})
        os.sched_setaffinity(child.pid, {1})
    assert child.stdout is not None
    from twisted.internet.threads import deferToThread

    if (await deferToThread(child.stdout.readline)).strip() != "ready":
        child.kill()
        raise SystemExit(refused)
    return child


def drain(socks: list[socket.socket]) -> None:
    """Read and drop everything the (non-blocking) sockets get until stdin closes; then
    read what is still on its way and print the number of bytes read in all."""
    poller = select.epoll()
    for s in socks:
        poller.register(s.fileno(), select.EPOLLIN)
    by_fd = {s.fileno(): s for s in socks}
    poller.register(sys.stdin.fileno(), select.EPOLLIN)
    received = 0
    while True:
        for fd, _ in poller.poll():
            if fd == sys.stdin.fileno():  # the end: what was read, once all has arrived
                poller.unregister(fd)
                while events := poller.poll(0.3):
                    for fd, _ in events:
                        try:
                            received += len(by_fd[fd].recv(65536))
                        except BlockingIOError:
                            pass
                print(received, flush=True)
                return
            try:
                received += len(by_fd[fd].recv(65536))
            except BlockingIOError:
                pass


def main(doc: str, reader: Callable[[int, int], None],
         measure: Callable[[argparse.Namespace], Coroutine[Any, Any, None]]) -> None:
    """A step benchmark's command line: ``--reader PORT MEMBERS`` (the reader process),
    else ``--members``, ``--turns``, ``--passes``, ``--no-pin`` and the measuring run."""
    if len(sys.argv) > 1 and sys.argv[1] == "--reader":
        reader(int(sys.argv[2]), int(sys.argv[3]))
        return
    p = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    p.add_argument("--members", type=int, default=2000)
    p.add_argument("--turns", type=int, default=60)
    p.add_argument("--passes", type=int, default=5)
    p.add_argument("--no-pin", dest="pin", action="store_false")
    run_measure(measure, p.parse_args())


def run_measure(measure: Callable[[argparse.Namespace], Coroutine[Any, Any, None]],
                opts: argparse.Namespace) -> None:
    """Run ``measure(opts)`` on the default reactor with enough file descriptors for its
    members; exit 1 (its traceback printed) when it fails."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, 4 * opts.members + 100)),
                                                hard))
    from twisted.internet import reactor
    from twisted.internet.defer import Deferred

    failed: list[Any] = []

    def run() -> None:
        d = Deferred.fromCoroutine(measure(opts))
        d.addErrback(lambda f: (failed.append(f), print(f.getTraceback(), file=sys.stderr)))
        d.addBoth(lambda _: reactor.stop())

    reactor.callWhenRunning(run)
    reactor.run()
    if failed:
        raise SystemExit(1)
